FROM alpine
USER ${NAME:?must be set}
