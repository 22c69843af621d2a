#!/bin/sh
# Install the Debian package with the real Fashion-MNIST IDX files (tests read them
# from /usr/share/datasets/fashion-mnist). Quiet no-op when it is already installed.
set -eu
pkg=dataset-fashion-mnist
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q "$pkg" || { $sudo apt-get update -q && $sudo apt-get install -y -q "$pkg"; }
