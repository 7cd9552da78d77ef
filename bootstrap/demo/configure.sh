#!/bin/sh
# Demo guest script: runs from stdin over the channel and writes a report.
set -eu
cd ~/beachhead-demo
{
  echo "greeting: ${GREETING}"
  echo "host: $(hostname)"
  echo "motd sha256: $(sha256sum motd | cut -d' ' -f1)"
} > report.txt
echo "report written"
