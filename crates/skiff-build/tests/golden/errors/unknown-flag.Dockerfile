FROM alpine
COPY --from=x --bogus a b
