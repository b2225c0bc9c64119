# Parameter Golf toolkit. `make help` lists the targets.
PYTHON ?= python3
SHARED ?= ../shared
NPROC ?= 1
ARTIFACT ?=
LOG ?=
DIR ?=
NAME ?=
LOGS ?=
REFERENCE ?=
REFERENCE_BPB ?=
ARTIFACTS ?=
LABEL ?=
AUTHOR ?=
GITHUB_ID ?=
ARCH ?=

.PHONY: help setup devset test train pack verify-artifact report-artifact submission check-submission bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: ## install everything (CPU torch + triton for the kernel tests where no CUDA torch exists), then build the devset if no official data
	@if $(PYTHON) -c "import torch,sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
		echo "setup: keeping the CUDA torch already installed"; \
	else $(PYTHON) -m pip install -q torch==2.13.0 triton==3.9.0; fi
	$(PYTHON) -m pip install -q -r requirements.txt
	@if ls data/datasets/fineweb10B_sp*/fineweb_val_*.bin >/dev/null 2>&1; then \
		echo "setup: official data present, devset not needed"; \
	else $(MAKE) devset; fi

devset: ## build data/datasets/devset_sp{1024,8192} from ../shared (deterministic, skips done work)
	$(PYTHON) -m data.devset --shared $(SHARED)

test: ## ruff format + lint, then the test suite (CPU, < 20 min on 2 cores)
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q tests

train: ## train + export + eval: CPU tiny config by default; NPROC=8 for torchrun on 8 GPUs (env vars pass through)
	@if [ "$(NPROC)" = "1" ]; then $(PYTHON) train_gpt.py; \
	else torchrun --standalone --nproc_per_node=$(NPROC) train_gpt.py; fi

pack: ## [KEY=VALUE ...] write packed/train_gpt.py: minified + lzma self-extracting copy (fewer code bytes; runs identically), carrying the plug-ins the run these settings configure imports (the record's kernels.py; seed_archs.py for ARCH=worker|pse|scan, ngram_mix.py for an n-gram path)
	$(PYTHON) -m quant.pack train_gpt.py --auto --out packed/train_gpt.py

verify-artifact: ## ARTIFACT=path [LOG=log] [CODE=file] [VAL=glob TOKENIZER=model] [DEVICE=cpu|cuda]: size, decode, rebuild, re-score, compare
	$(PYTHON) -m quant.verify $(ARTIFACT) --code $(or $(CODE),train_gpt.py) $(if $(LOG),--log $(LOG)) $(if $(VAL),--val '$(VAL)') $(if $(TOKENIZER),--tokenizer $(TOKENIZER)) $(if $(DEVICE),--device $(DEVICE))

report-artifact: ## ARTIFACT=path: bytes per tensor class and what each codec would give
	$(PYTHON) -m quant.report $(ARTIFACT)

submission: ## NAME=... LOGS="a.txt b.txt c.txt" [SCORE_PATH=sliding] [REFERENCE=dir | REFERENCE_BPB=x,y,z] [ARTIFACTS=artifacts] [LABEL="..."] [TRACK=non_record_16mb] [ALLOW_RULE_BREAKS=1]
	$(PYTHON) -m submissions.make --name $(NAME) --logs $(LOGS) $(if $(SCORE_PATH),--score-path $(SCORE_PATH)) $(if $(REFERENCE),--reference $(REFERENCE)) $(if $(REFERENCE_BPB),--reference-bpb $(REFERENCE_BPB)) $(if $(ARTIFACTS),--artifacts $(ARTIFACTS)) $(if $(LABEL),--label "$(LABEL)") $(if $(TRACK),--track $(TRACK)) $(if $(AUTHOR),--author "$(AUTHOR)") $(if $(GITHUB_ID),--github-id $(GITHUB_ID)) $(if $(ALLOW_RULE_BREAKS),--allow-rule-breaks)

check-submission: ## DIR=... [ARTIFACTS=artifacts]: PASS/FAIL table for a submission folder (ours or the official records layout)
	$(PYTHON) -m submissions.check $(DIR) $(if $(ARTIFACTS),--artifacts $(ARTIFACTS))

bench: ## NAME=... [ARGS="KEY=VALUE ..."]: one proxy-protocol run -> bench/out/NAME.json (GPU)
	$(PYTHON) bench/proxy_run.py $(NAME) $(ARGS)
