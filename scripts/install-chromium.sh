#!/usr/bin/env bash
# Best effort: Debian's Chromium for the report's browser test. The test skips with a
# clear message where it cannot be installed.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "install-chromium: could not install chromium; the browser test will be skipped" >&2
else
  echo "install-chromium: not root or no apt-get; the browser test will be skipped" >&2
fi
exit 0
