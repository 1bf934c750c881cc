FROM node:20
ARG PORT=3000
ENV APP_HOME=/srv/app
VOLUME /data $APP_HOME/cache
VOLUME ["/logs"]
USER node
USER ${APP_USER:-node}:node
EXPOSE $PORT 9229/tcp
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=1m30s --retries=3 CMD curl -f http://localhost:$PORT/ || exit 1
HEALTHCHECK CMD ["node", "health.js"]
HEALTHCHECK NONE
ONBUILD COPY . $APP_HOME
ONBUILD RUN npm ci
Workdir $APP_HOME
ADD --chown=node:node --link https://example.com/x.tar.gz /tmp/
