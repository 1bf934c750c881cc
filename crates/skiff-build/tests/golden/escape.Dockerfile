# escape=`
# syntax=docker/dockerfile:1

FROM mcr.microsoft.com/windows/servercore:ltsc2022
WORKDIR C:\app
ENV ROOT=C:\data
COPY app.ps1 C:\app\
RUN powershell -Command `
    Write-Host hi ; `
    Write-Host there
LABEL path="$ROOT\logs" price=`$5
CMD ["powershell", "C:\\app\\app.ps1"]
