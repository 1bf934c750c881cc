FROM alpine
run echo "shell form"
RUN ["echo", "exec form"]
CMD [ "sh", "-c", "echo $HOME" ]
CMD ["broken json", ]
ENTRYPOINT exec /bin/app --flag
ENTRYPOINT []
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN echo "now bash"
