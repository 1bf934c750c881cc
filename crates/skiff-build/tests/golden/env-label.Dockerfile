FROM alpine
ENV K=V K2="v 2" K3='single $K' K4=a\ b
ENV LEGACY the rest of the line
ENV EMPTY=""
ENV REF=$K-${K2}
LABEL org.opencontainers.image.title="Skiff test" version=1.0
LABEL "quoted key"="quoted value"
LABEL legacy value with spaces
MAINTAINER Jane Doe <jane@example.com>
