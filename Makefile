# llmconn developer targets. `make` alone lists them.
#
# Everything local lives in the git-ignored .local/: the control plane's binaries (bin/),
# its state, logs, pid files and kubeconfig. kubectl is always .local/bin/kubectl.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
LOCAL := .local
BIN := $(LOCAL)/bin
KUBECONFIG_LOCAL := $(CURDIR)/$(LOCAL)/kubeconfig
# Always the built kubectl and the local cluster, whatever KUBECONFIG the shell has.
KUBECTL := $(BIN)/kubectl --kubeconfig $(KUBECONFIG_LOCAL) --cache-dir $(LOCAL)/kubectl-cache
CLUSTER := $(PY) tests/controlplane/cluster.py
DEMO_NAMESPACE := llmconn-demo

KUBE_MODULE := tests/controlplane/kube
ETCD_MODULE := tests/controlplane/etcd
# Build with the Go on PATH and the committed go.sum only; caches stay at Go's defaults
# (outside the repo) so they survive between runs on the same machine.
GO_ENV := GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0

.PHONY: help release-check venv binaries control-plane node-binaries image cluster-up node-up cluster-down \
	cluster-status crds test lint format demo run bench clean helm kstatus-check chart-sync \
	flux-cel-check argocd-lua promtool

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{ printf "  make %-14s %s\n", $$1, $$2 }'

# -- Python ------------------------------------------------------------------------------

venv: $(VENV_STAMP) ## create .venv and install the package with its test tools

$(VENV_STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

# -- control plane binaries --------------------------------------------------------------

CONTROL_PLANE := $(BIN)/kube-apiserver $(BIN)/kubectl $(BIN)/etcd
NODE := $(BIN)/kubelet $(BIN)/kube-controller-manager $(BIN)/kube-scheduler

binaries: $(CONTROL_PLANE) node-binaries helm kstatus-check flux-cel-check argocd-lua promtool ## build everything `make test` runs into .local/bin: the control plane, the test node, helm and the GitOps and alert test tools

control-plane: $(CONTROL_PLANE) ## build kube-apiserver, kubectl and etcd (all `make demo` needs) into .local/bin

node-binaries: $(NODE) $(BIN)/pause ## build the test node's kubelet, kube-controller-manager, kube-scheduler and pause into .local/bin

# All five from one wrapper module, so client, server and node are the same Kubernetes
# version. The -X flags are the version variables Kubernetes' own build sets (else it says
# v0.0.0-master). $(1): the commands; each build's time goes to .local/logs/build.log.
define kube_build
	@mkdir -p $(BIN) $(LOCAL)/logs
	@echo "building $(1) from Go modules (first run takes several minutes)..."
	@cd $(KUBE_MODULE) && \
	version=$$($(GO_ENV) go list -m -f '{{.Version}}' k8s.io/kubernetes) && \
	major=$${version#v}; major=$${major%%.*}; \
	minor=$${version#v$$major.}; minor=$${minor%%.*}; \
	ldflags="-s -w"; \
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do \
		ldflags+=" -X $$pkg.gitVersion=$$version -X $$pkg.gitMajor=$$major -X $$pkg.gitMinor=$$minor"; \
	done; \
	start=$$SECONDS; \
	$(GO_ENV) go build -trimpath -ldflags "$$ldflags" -o $(abspath $(BIN))/ \
		$(foreach cmd,$(1),k8s.io/kubernetes/cmd/$(cmd)); \
	took=$$((SECONDS - start)); \
	echo "built $(1) $$version in $${took}s"; \
	echo "$$(date -u +%FT%TZ) $(subst $(eval) ,+,$(1)) $$version $${took}s" >> $(abspath $(LOCAL))/logs/build.log
	@touch $(foreach cmd,$(1),$(BIN)/$(cmd))
endef

$(BIN)/kube-apiserver $(BIN)/kubectl &: $(KUBE_MODULE)/go.mod $(KUBE_MODULE)/go.sum
	$(call kube_build,kube-apiserver kubectl)

$(NODE) &: $(KUBE_MODULE)/go.mod $(KUBE_MODULE)/go.sum
	$(call kube_build,kubelet kube-controller-manager kube-scheduler)

$(BIN)/etcd: $(ETCD_MODULE)/go.mod $(ETCD_MODULE)/go.sum
	@mkdir -p $(BIN) $(LOCAL)/logs
	@echo "building etcd from Go modules..."
	@cd $(ETCD_MODULE) && \
	start=$$SECONDS; \
	$(GO_ENV) go build -trimpath -ldflags "-s -w" -o $(abspath $@) go.etcd.io/etcd/server/v3; \
	took=$$((SECONDS - start)); \
	echo "built etcd in $${took}s"; \
	echo "$$(date -u +%FT%TZ) etcd $${took}s" >> $(abspath $(LOCAL))/logs/build.log

# The node's sandbox program: the project's own, static, in a module of its own.
PAUSE_MODULE := tests/node/pause

$(BIN)/pause: $(PAUSE_MODULE)/go.mod $(PAUSE_MODULE)/main.go
	@mkdir -p $(BIN)
	@cd $(PAUSE_MODULE) && $(GO_ENV) go build -trimpath -ldflags "-s -w" -o $(abspath $@) .

# -- images for the test node ------------------------------------------------------------

# No registry: the operator's image is operator/Dockerfile built unchanged by podman on a
# Debian base made with Debian's own mmdebstrap; the sandbox image holds only the pause
# binary. Both are archives the node imports into its containerd when it starts.
IMAGES := $(LOCAL)/images
BASE_PACKAGES := python3,python3-venv,python3-pip,python-is-python3,ca-certificates
OPERATOR_SOURCES := operator/Dockerfile pyproject.toml README.md $(shell find operator/llmconn -type f -not -name '*.pyc' 2>/dev/null)

image: $(IMAGES)/llmconn.tar $(IMAGES)/pause.tar ## build the operator's image from operator/Dockerfile (podman, on an mmdebstrap base) and the node's sandbox image into .local/images

$(IMAGES)/base.tar:
	@mkdir -p $(IMAGES) $(LOCAL)/logs
	@echo "making the Debian base image with mmdebstrap (minutes)..."
	@start=$$SECONDS; \
	mmdebstrap --quiet --format=tar --variant=minbase --include=$(BASE_PACKAGES) bookworm $@.partial; \
	mv $@.partial $@; \
	took=$$((SECONDS - start)); \
	echo "made the base image in $${took}s"; \
	echo "$$(date -u +%FT%TZ) base-image $${took}s" >> $(abspath $(LOCAL))/logs/build.log

$(IMAGES)/llmconn.tar: $(IMAGES)/base.tar $(OPERATOR_SOURCES) charts/llmconn/Chart.yaml tests/node/images.py $(VENV_STAMP)
	@mkdir -p $(LOCAL)/logs
	@echo "building the operator's image from operator/Dockerfile (log: $(LOCAL)/logs/image.log)..."
	@start=$$SECONDS; \
	$(PY) tests/node/images.py operator --base $(IMAGES)/base.tar --out $@ \
		> $(LOCAL)/logs/image.log 2>&1 || { tail -n 40 $(LOCAL)/logs/image.log; exit 1; }; \
	took=$$((SECONDS - start)); \
	tail -n 1 $(LOCAL)/logs/image.log; \
	echo "$$(date -u +%FT%TZ) operator-image $${took}s" >> $(abspath $(LOCAL))/logs/build.log

$(IMAGES)/pause.tar: $(BIN)/pause tests/node/images.py $(VENV_STAMP)
	@$(PY) tests/node/images.py pause --binary $(BIN)/pause --out $@

# -- chart and GitOps test tools --------------------------------------------------------

# helm from its Go module (helm.sh/helm/v3 has no replace directives, so `go install` works).
# The -X flags are those of helm's own release build: its version, and the Kubernetes
# version `helm template` and `helm lint` assume, that of the client-go it requires.
HELM_VERSION := v3.22.0
HELM_KUBE_MINOR := 37
HELM_LDFLAGS := -s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	$(foreach pkg,pkg/lint/rules pkg/chartutil,-X helm.sh/helm/v3/$(pkg).k8sVersionMajor=1 \
		-X helm.sh/helm/v3/$(pkg).k8sVersionMinor=$(HELM_KUBE_MINOR))
KSTATUS_MODULE := tests/kstatus

helm: ## build helm into .local/bin (when missing or another version)
	@if [ "$$($(BIN)/helm version --template '{{.Version}}' 2>/dev/null)" != "$(HELM_VERSION)" ]; then \
		mkdir -p $(BIN) $(LOCAL)/logs; \
		echo "building helm $(HELM_VERSION) from Go modules..."; \
		start=$$SECONDS; \
		GOBIN=$(abspath $(BIN)) $(GO_ENV) go install -trimpath -ldflags "$(HELM_LDFLAGS)" \
			helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
		took=$$((SECONDS - start)); \
		echo "built helm $(HELM_VERSION) in $${took}s"; \
		echo "$$(date -u +%FT%TZ) helm $(HELM_VERSION) $${took}s" >> $(abspath $(LOCAL))/logs/build.log; \
	fi

kstatus-check: $(BIN)/kstatus-check ## build the kstatus checker (tests/kstatus) into .local/bin

$(BIN)/kstatus-check: $(KSTATUS_MODULE)/go.mod $(KSTATUS_MODULE)/go.sum $(KSTATUS_MODULE)/main.go
	@mkdir -p $(BIN)
	@cd $(KSTATUS_MODULE) && $(GO_ENV) go build -trimpath -ldflags "-s -w" -o $(abspath $@) .

# Flux's CEL health checks (tests/fluxcel) and Argo CD's Lua VM (tests/argocdlua), each in a
# small module of its own, like the kstatus checker.
FLUXCEL_MODULE := tests/fluxcel
ARGOCDLUA_MODULE := tests/argocdlua

flux-cel-check: $(BIN)/flux-cel-check ## build Flux's CEL health-check evaluator (tests/fluxcel) into .local/bin

$(BIN)/flux-cel-check: $(FLUXCEL_MODULE)/go.mod $(FLUXCEL_MODULE)/go.sum $(FLUXCEL_MODULE)/main.go
	@mkdir -p $(BIN)
	@cd $(FLUXCEL_MODULE) && $(GO_ENV) go build -trimpath -ldflags "-s -w" -o $(abspath $@) .

argocd-lua: $(BIN)/argocd-lua ## build the Argo CD Lua harness (gopher-lua, tests/argocdlua) into .local/bin

$(BIN)/argocd-lua: $(ARGOCDLUA_MODULE)/go.mod $(ARGOCDLUA_MODULE)/go.sum $(wildcard $(ARGOCDLUA_MODULE)/*.go)
	@mkdir -p $(BIN)
	@cd $(ARGOCDLUA_MODULE) && $(GO_ENV) go build -trimpath -ldflags "-s -w" -o $(abspath $@) .

# promtool from its Go module, as Prometheus' own slim builds do it: the remove_all_sd tag
# leaves out the service-discovery plugins (cloud SDKs), which rule tests never use and which
# would triple the cold build. Module v0.X.Y is Prometheus 3.X.Y.
PROMETHEUS_MODULE_VERSION := v0.316.0
PROMETHEUS_VERSION := 3.16.0

promtool: ## build promtool into .local/bin (when missing or another version)
	@installed=$$($(BIN)/promtool --version 2>/dev/null || true); \
	if [[ "$$installed" != *"version $(PROMETHEUS_VERSION) "* ]]; then \
		mkdir -p $(BIN) $(LOCAL)/logs; \
		echo "building promtool $(PROMETHEUS_VERSION) from Go modules..."; \
		start=$$SECONDS; \
		GOBIN=$(abspath $(BIN)) $(GO_ENV) go install -trimpath -tags remove_all_sd \
			-ldflags "-s -w -X github.com/prometheus/common/version.Version=$(PROMETHEUS_VERSION)" \
			github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_MODULE_VERSION); \
		took=$$((SECONDS - start)); \
		echo "built promtool $(PROMETHEUS_VERSION) in $${took}s"; \
		echo "$$(date -u +%FT%TZ) promtool $(PROMETHEUS_VERSION) $${took}s" >> $(abspath $(LOCAL))/logs/build.log; \
	fi

chart-sync: ## copy the canonical CRD into the chart (a test fails when they differ)
	cp crds/llmconnections.yaml charts/llmconn/crds/llmconnections.yaml

# -- local control plane -----------------------------------------------------------------

cluster-up: $(VENV_STAMP) $(CONTROL_PLANE) ## start etcd + kube-apiserver in the background (idempotent)
	@$(CLUSTER) up --dir $(LOCAL)

node-up: $(VENV_STAMP) $(CONTROL_PLANE) node-binaries image ## cluster-up with a node: containerd, kubelet, kube-controller-manager, kube-scheduler, the images imported
	@$(CLUSTER) up --node --dir $(LOCAL) --image $(IMAGES)/pause.tar --image $(IMAGES)/llmconn.tar

cluster-down: ## stop the control plane, its node, and every process recorded in .local/run/*.pid
	@if [ -x $(PY) ]; then $(CLUSTER) down --dir $(LOCAL); \
	else echo "no $(VENV): nothing was started"; fi

cluster-status: $(VENV_STAMP) ## say whether the local control plane is running
	@$(CLUSTER) status --dir $(LOCAL)

crds: cluster-up ## install the LLMConnection CRD into the local cluster
	@$(KUBECTL) apply -f crds/llmconnections.yaml
	@$(KUBECTL) wait --for=condition=Established \
		--timeout=60s crd/llmconnections.llmconn.dev

# -- quality -----------------------------------------------------------------------------

# Both halves always run, so one CI log shows test and lint results together. The image is
# built where the test node can run (root, with mmdebstrap and podman), and always in CI,
# where the front-door tests may not skip.
NODE_MACHINE := $(shell [ "$$(id -u)" = 0 ] && command -v mmdebstrap >/dev/null && \
	command -v podman >/dev/null && echo yes)
test: $(VENV_STAMP) binaries $(if $(NODE_MACHINE)$(CI),image) ## run the whole test suite, then lint
	@status=0; \
	$(VENV)/bin/pytest -p no:cacheprovider || status=$$?; \
	$(MAKE) lint || status=$$?; \
	exit $$status

release-check: $(VENV_STAMP) ## check that pyproject.toml, the chart's version and appVersion, the changelog's newest release and the documented image tag name one version
	@$(PY) tests/releasekit.py

lint: $(VENV_STAMP) ## ruff check, ruff format --check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV_STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# -- demo --------------------------------------------------------------------------------

demo: crds ## the operator on the local cluster with local providers and sample connections
	@$(PY) tests/demo/demo.py --dir $(LOCAL)

run: $(VENV_STAMP) ## run the operator against KUBECONFIG (default: the local cluster), all namespaces
	@if [ -z "$${KUBECONFIG:-}" ]; then $(MAKE) crds; fi
	KUBECONFIG=$${KUBECONFIG:-$(KUBECONFIG_LOCAL)} $(VENV)/bin/llmconn run -A $(RUN_ARGS)

# The peers and the plots need the bench extra; --peer blackbox needs blackbox_exporter too.
BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.bench-installed
# The naive Kopf peer runs from a venv of its own with the kubernetes client, which Kopf imports
# whenever it is installed: in .venv it would add to llmconn's memory and start-up too.
PEER_VENV := $(LOCAL)/peer-venv
PEER_STAMP := $(PEER_VENV)/.installed
bench: $(BENCH_STAMP) $(CONTROL_PLANE) $(if $(findstring blackbox,$(BENCH_ARGS)),blackbox-exporter) $(if $(findstring naive-kopf,$(BENCH_ARGS)),$(PEER_STAMP)) ## benchmark on its own control plane; BENCH_ARGS="--connections 10000 --peer naive-kopf"
	@$(PY) tests/bench/bench.py $(BENCH_ARGS)

$(BENCH_STAMP): $(VENV_STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

$(PEER_STAMP): pyproject.toml
	@[ -x $(PEER_VENV)/bin/python ] || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet '.[peer]'
	@touch $@

# Prometheus' blackbox_exporter, a peer for `make bench --peer blackbox`, from a wrapper module
# (tests/blackbox) like etcd's, with the version flag of its release build. Not part of
# `binaries`: no test needs it.
BLACKBOX_MODULE := tests/blackbox

.PHONY: blackbox-exporter
blackbox-exporter: $(BIN)/blackbox_exporter ## build Prometheus' blackbox_exporter (tests/blackbox) into .local/bin, for `make bench`'s --peer blackbox

$(BIN)/blackbox_exporter: $(BLACKBOX_MODULE)/go.mod $(BLACKBOX_MODULE)/go.sum
	@mkdir -p $(BIN) $(LOCAL)/logs
	@echo "building blackbox_exporter from Go modules..."
	@cd $(BLACKBOX_MODULE) && \
	version=$$($(GO_ENV) go list -m -f '{{.Version}}' github.com/prometheus/blackbox_exporter) && \
	start=$$SECONDS; \
	$(GO_ENV) go build -trimpath \
		-ldflags "-s -w -X github.com/prometheus/common/version.Version=$${version#v}" \
		-o $(abspath $@) github.com/prometheus/blackbox_exporter; \
	took=$$((SECONDS - start)); \
	echo "built blackbox_exporter $$version in $${took}s"; \
	echo "$$(date -u +%FT%TZ) blackbox_exporter $$version $${took}s" >> $(abspath $(LOCAL))/logs/build.log

SOAK_ARGS ?=
.PHONY: soak
soak: $(VENV_STAMP) $(CONTROL_PLANE) ## faults under load on its own control plane (minutes); SOAK_ARGS="--faults cd"
	@$(PY) tests/bench/soak.py $(SOAK_ARGS)

clean: cluster-down ## stop everything and remove .local state (keeps the built binaries and images)
	rm -rf $(LOCAL)/controlplane $(LOCAL)/logs $(LOCAL)/run $(LOCAL)/kubeconfig \
		$(LOCAL)/kubectl-cache $(LOCAL)/node $(LOCAL)/podman
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis
