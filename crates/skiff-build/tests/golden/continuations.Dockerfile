FROM ubuntu:24.04
RUN apt-get update \
# comments inside a continuation are dropped
    && apt-get install -y \
        ca-certificates \

        curl \
  # indented comment
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/bin:$PATH \
    LANG=C.UTF-8
RUN echo done \
