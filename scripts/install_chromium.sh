#!/usr/bin/env bash
# Installs Debian's chromium for the Space's browser test (tests/test_space_browser.py) when it is absent.
# Playwright drives this system browser through `executable_path`: never run `playwright install`.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
