#!/bin/sh
# Demo guest script: runs from stdin over the channel, leaves a report behind.
set -eu
mkdir -p /tmp/beachhead-demo
{
  echo "greeting: ${GREETING}"
  echo "host: $(hostname)"
  echo "motd sha256: $(sha256sum /tmp/beachhead-demo/motd | cut -d' ' -f1)"
} > /tmp/beachhead-demo/report.txt
echo "report written"
