//! The build context: .dockerignore, COPY/ADD source expansion, content digests (being written).
