# detr-mini-coco — the commands the README names.
#   make setup   .venv/ with the exact versions of requirements.lock, then the package (editable)
#   make test    the whole test suite, notebooks included (nbval, demo profile)
#   make test-oldest  the unit tests with the oldest supported torch and torchvision (2.4, 0.19), in .venv-oldest/
#   make lock    requirements.lock from pyproject.toml, after a dependency changed there (keeps the pins already
#                in the lock; UPGRADE=1 resolves afresh, UPGRADE="NAME ..." those packages only; FROM_ENV=1 pins
#                new packages at the versions .venv has)
#   make demo    all seven notebooks offline in the demo world, figures into runs/demo/report/
#   make study   download COCO val2017 and the checkpoint, run the real study (GPU): notebooks 01-06
#   make own DATASET=DIR   notebook 07 on your own COCO-format dataset (a folder laid out like COCO), into runs/own/
#   make report  render runs/$(PROFILE)/report/report.{html,pdf} (PROFILE=demo) or report/report.{html,pdf} (study)
#   make pretrain   pre-train the demo world's tiny DETR (data/pretrained/tiny_detr.pth; ~40 min on 2 CPU cores)
#   make notebooks  sync each notebooks/NN_name.py and .ipynb pair (jupytext: the newer file updates the other)
# With PY=python on the command line (`make study PY=python`), every target runs with that Python, in your own
# environment with its torch, and installs nothing: no .venv/, no lock (README, "On your GPU machine").
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
OLDEST := .venv-oldest
KERNEL := $(VENV)/.kernel
OWN_ENV := $(filter command line,$(origin PY))
SETUP := $(if $(OWN_ENV),,setup)
SETUP_KERNEL := $(if $(OWN_ENV),,setup kernel)
STUDY_NOTEBOOKS := 01_data_split 02_checkpoint_inspection 03_baseline 04_shallow_decoder 05_reduced_queries 06_analysis
NOTEBOOKS := $(STUDY_NOTEBOOKS) 07_your_dataset
PAPERMILL := $(PY) -m papermill --kernel python3 --no-progress-bar

.PHONY: setup lock kernel notebook-filter test test-oldest demo study own report pretrain notebooks clean-demo
PROFILE ?= demo

setup: $(STAMP) notebook-filter

# the lock's exact versions (what the demo's numbers were made with), then the package without resolving anything;
# pip check and lock.py --check fail when the lock no longer covers pyproject.toml (then: make lock)
$(STAMP): pyproject.toml $(LOCK)
	$(if $(OWN_ENV),$(error with PY=$(PY) your environment is used as it is: `pip install -e '.[dev]'` there))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(PY) tools/lock.py --check
	touch $(STAMP)

# resolves with .venv's interpreter (Python 3.11), installs nothing; then `make setup` installs the new lock
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/lock.py $(if $(filter 1,$(UPGRADE)),--upgrade,$(if $(UPGRADE),--upgrade $(UPGRADE))) \
	  $(if $(FROM_ENV),--prefer-installed)

# the notebooks' kernel "python3", pointing at this venv's interpreter (papermill and nbval start it by name), under
# the display name ipykernel gives it, which the notebooks' metadata holds (JupyterLab marks a notebook modified otherwise)
kernel: $(KERNEL)

$(KERNEL): $(STAMP) Makefile  # re-installed when the display name here changes
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)"
	touch $(KERNEL)

# the git filter of notebooks/*.ipynb (.gitattributes, tools/notebook_filter.py): outputs never reach a commit, and
# the working copies carry this kernel's language_info, so that JupyterLab opens them unmodified
notebook-filter:
	python3 tools/notebook_filter.py install

test: $(SETUP_KERNEL)
	$(PY) -m pytest -q tests
	DETR_NB_PROFILE=demo $(PY) -m pytest -q --nbval-lax notebooks/
	$(PY) -m detr_nb_utils.notebook.report --profile demo

# the unit tests in a second venv: torch and torchvision at the lower ends of pyproject.toml's ranges (the CUDA
# build PyPI serves, about 2.7 GB to download), everything else at the lock's pins
test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m pytest -q tests

# needs about $(OLDEST_GB) GB free on the disk: the wheels (2.7 GB, downloaded without pip's cache) and what they unpack
# to (6 GB); with less it stops before downloading and says so, rather than failing half-way through pip
OLDEST_GB := 10
$(OLDEST)/.installed: pyproject.toml $(LOCK)
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	$(OLDEST)/bin/python -c "import torch" 2>/dev/null || test "$$free" -ge $(OLDEST_GB) || { \
	  echo "make test-oldest: $(OLDEST)/ needs about $(OLDEST_GB) GB free on the disk of $$PWD; $$free GB are free." \
	       "Free some space (an old clone's .venv/, pip's cache: pip cache purge) and run it again."; exit 1; }
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python tools/lock.py --oldest > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pip install --quiet --no-cache-dir -c $(OLDEST)/constraints.txt -e '.[dev]' setuptools
	$(OLDEST)/bin/python -c "import torch, torchvision; print('oldest:', torch.__version__, torchvision.__version__)"
	touch $@

# $(call run-notebook,PROFILE,NOTEBOOK): one notebook with papermill; the executed copy in runs/PROFILE/notebooks/,
# figures and tables where the profile puts them (study: report/; demo: runs/demo/report/, never the study's report/)
define run-notebook
	@mkdir -p runs/$(1)/notebooks
	@echo "== $(2) ($(1) profile) starts"
	@$(if $(DEMO_NICE_$(2)),nice -n $(DEMO_NICE_$(2)) )$(PAPERMILL) notebooks/$(2).ipynb runs/$(1)/notebooks/$(2).ipynb \
	  -p profile $(1)$(if $(DEMO_SIDE_BY_SIDE),$(if $(filter $(2),$(DEMO_WAIT)), $(DEMO_WAIT_ARGS)))
	@echo "== $(2) ($(1) profile) done"
endef

# $(call run-notebooks,PROFILE,NOTEBOOKS): the notebooks one after the other (the study: one GPU, used by one at a time)
define run-notebooks
	mkdir -p runs/$(1)/notebooks
	for nb in $(2); do \
	  echo "== $$nb ($(1) profile)"; \
	  $(PAPERMILL) notebooks/$$nb.ipynb runs/$(1)/notebooks/$$nb.ipynb -p profile $(1) \
	    || exit 1; \
	done
endef

# The demo runs a notebook as soon as what it reads exists, DEMO_JOBS at a time (make -j): 02, 03, 04, 05 and 07 once
# 01 has made the split, 06 after all of 02-05. 04 and 05 compare with each other's runs and 03's: they train their
# own beside 03, one at a time in their kernel (no worker processes to start), and wait (DEMO_WAIT, -p wait_for_runs) for the
# runs they compare with before comparing, so every comparison is the one the notebooks one after the other would
# print once all exist (DEMO_SIDE_BY_SIDE: only when `make demo` runs them side by side; a notebook's own target, or
# DEMO_JOBS=1, runs it without waiting). 02 and 07 (DEMO_NICE_*), which nothing waits for, run at a lower priority
# (nice) on what 03-06 leave idle. However many notebooks train, a run holds one of cores / threads slots while it
# trains (detr_nb_utils/training/side_by_side.py, core_slot; niced runs take none).
# Every run's metrics are the same as one notebook after the other (a run computes with its own fixed threads).
DEMO_JOBS ?= 5
DEMO_NICE_02_checkpoint_inspection := 10
DEMO_NICE_07_your_dataset := 10
DEMO_WAIT := 04_shallow_decoder 05_reduced_queries
DEMO_WAIT_ARGS := -p wait_for_runs 1800 -p parallel_runs 1
DEMO_TARGETS := $(addprefix demo-,$(NOTEBOOKS))
.PHONY: demo-notebooks $(DEMO_TARGETS)
demo-notebooks: $(DEMO_TARGETS)
$(DEMO_TARGETS): demo-%:
	$(call run-notebook,demo,$*)
$(filter-out demo-01_data_split demo-06_analysis,$(DEMO_TARGETS)): demo-01_data_split
demo-06_analysis: demo-02_checkpoint_inspection demo-03_baseline demo-04_shallow_decoder demo-05_reduced_queries

demo: $(SETUP_KERNEL)
	$(MAKE) --no-print-directory -j$(DEMO_JOBS) demo-notebooks $(if $(filter-out 1,$(DEMO_JOBS)),DEMO_SIDE_BY_SIDE=1)
	$(PY) -m detr_nb_utils.notebook.report --profile demo

study: $(SETUP_KERNEL)
	$(PY) -m detr_nb_utils.data.download coco --root data/coco
	$(PY) -m detr_nb_utils.data.download checkpoint --dest data/checkpoints
	$(call run-notebooks,study,$(STUDY_NOTEBOOKS))

# notebook 07 on your own dataset with the study's recipe (the official checkpoint, downloaded when missing)
own: $(SETUP_KERNEL)
	@test -n "$(DATASET)" || { echo "make own needs DATASET=DIR, a folder laid out like COCO (see README)"; exit 2; }
	$(PY) -m detr_nb_utils.data.download checkpoint --dest data/checkpoints
	mkdir -p runs/own/notebooks
	$(PAPERMILL) notebooks/07_your_dataset.ipynb runs/own/notebooks/07_your_dataset.ipynb -p profile study \
	  -p dataset_dir $(DATASET) -p out_dir runs/own

# the team report from the profile's run folders and exported tables and figures: one self-contained HTML file
# and the same as a PDF
report: $(SETUP)
	$(PY) -m detr_nb_utils.notebook.report --profile $(PROFILE)

# the committed checkpoint the demo fine-tunes; re-running reproduces it (the same weights with the same torch and
# number of threads)
pretrain: $(SETUP)
	$(PY) -m detr_nb_utils.training.pretrain --out data/pretrained/tiny_detr.pth

# the notebooks' source is notebooks/NN_name.py (jupytext py:percent), paired with the .ipynb; sync the pair
notebooks: $(SETUP)
	$(PY) -m jupytext --sync notebooks/0*.py

clean-demo:
	rm -rf runs/demo data/synthetic
