FROM alpine
RUN true






RUN <<EOF
echo never
ends
still
