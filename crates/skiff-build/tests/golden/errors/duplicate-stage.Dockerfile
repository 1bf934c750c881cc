FROM alpine AS a
RUN true
FROM alpine AS A
