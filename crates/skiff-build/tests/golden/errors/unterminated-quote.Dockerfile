FROM alpine
WORKDIR "/unterminated
