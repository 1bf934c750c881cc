ARG REGISTRY=docker.io
ARG VERSION=3.19
ARG TAG=${VERSION}-slim
ARG UNUSED
FROM ${REGISTRY}/library/alpine:${VERSION} AS base
# VERSION is not visible here until re-declared.
LABEL before="v=${VERSION}"
ARG VERSION
LABEL after="v=${VERSION}"
ARG LOCAL=local-${VERSION}
RUN echo "$LOCAL $VERSION"
ENV VERSION=env-wins
ARG VERSION=ignored-default
WORKDIR /opt/$VERSION/${LOCAL}
ENV A=1
ENV A=2 B=$A
LABEL a=$A b=$B unset=${NOPE:-fallback} alt=${A:+set}

FROM base
# ENV carries over from a stage base; ARGs do not.
WORKDIR /x/$VERSION/${LOCAL:-no-local}
FROM --platform=$BUILDPLATFORM alpine:$TAG
