FROM debian:bookworm
ENV GREETING=hello
RUN <<EOF
apt-get update
apt-get install -y curl
EOF
RUN <<-EOT bash
	set -e
	echo "$GREETING"
	EOT
RUN python3 <<"PY" > /out.txt
print("$HOME stays literal")
PY
RUN cat <<A >/a && cat <<'B' >/b
first $GREETING
A
second $GREETING
B
COPY <<EOF /etc/motd
"$GREETING" from skiff
EOF
COPY --chmod=0755 <<'EOF' /entrypoint.sh
#!/bin/sh
exec "$@"
EOF
ADD <<one <<two /etc/conf.d/
first file
one
second file
two
COPY <<EOF extra.txt /dest/
inline
EOF
