FROM alpine
HEALTHCHECK --interval=often CMD true
