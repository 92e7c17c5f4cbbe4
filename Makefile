.PHONY: run test test-fast proto

run:        ## the daemon in local dev mode (state under .dev/)
	scripts/dev.sh

test:       ## the whole suite, as CI runs it
	scripts/test.sh

test-fast:  ## unit tests only
	.venv/bin/python -m pytest -q

proto:      ## regenerate daemon/securellm_bridge/_pb from proto/
	.venv/bin/python scripts/gen_proto.py
