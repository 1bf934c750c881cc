FROM alpine
RUN echo ok




RUNN echo typo
