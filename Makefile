# Convenience wrappers around scripts/ (the scripts are the source of truth).
.PHONY: test demo deps

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh $(ARGS)

deps:
	bash scripts/install-deps.sh
