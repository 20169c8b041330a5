#!/usr/bin/env bash
# Helm is a client only; nothing runs, so there is nothing to stop.
exit 0
