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

.PHONY: help venv binaries cluster-up cluster-down cluster-status crds test lint format \
	demo run bench clean helm kstatus-check chart-sync flux-cel-check argocd-lua promtool

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

binaries: $(BIN)/kube-apiserver $(BIN)/kubectl $(BIN)/etcd helm kstatus-check flux-cel-check argocd-lua promtool ## build kube-apiserver, kubectl, etcd, helm and the GitOps and alert test tools into .local/bin

# Both from one wrapper module, so client and server are the same Kubernetes version. The
# -X flags are the version variables Kubernetes' own build sets (else it says v0.0.0-master).
$(BIN)/kube-apiserver $(BIN)/kubectl &: $(KUBE_MODULE)/go.mod $(KUBE_MODULE)/go.sum
	@mkdir -p $(BIN) $(LOCAL)/logs
	@echo "building kube-apiserver and kubectl from Go modules (first run takes several minutes)..."
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
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl; \
	took=$$((SECONDS - start)); \
	echo "built kube-apiserver and kubectl $$version in $${took}s"; \
	echo "$$(date -u +%FT%TZ) kube-apiserver+kubectl $$version $${took}s" >> $(abspath $(LOCAL))/logs/build.log
	@touch $(BIN)/kube-apiserver $(BIN)/kubectl

$(BIN)/etcd: $(ETCD_MODULE)/go.mod $(ETCD_MODULE)/go.sum
	@mkdir -p $(BIN) $(LOCAL)/logs
	@echo "building etcd from Go modules..."
	@cd $(ETCD_MODULE) && \
	start=$$SECONDS; \
	$(GO_ENV) go build -trimpath -ldflags "-s -w" -o $(abspath $@) go.etcd.io/etcd/server/v3; \
	took=$$((SECONDS - start)); \
	echo "built etcd in $${took}s"; \
	echo "$$(date -u +%FT%TZ) etcd $${took}s" >> $(abspath $(LOCAL))/logs/build.log

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

cluster-up: $(VENV_STAMP) binaries ## start etcd + kube-apiserver in the background (idempotent)
	@$(CLUSTER) up --dir $(LOCAL)

cluster-down: ## stop the control plane and every process recorded in .local/run/*.pid
	@if [ -x $(PY) ]; then $(CLUSTER) down --dir $(LOCAL); \
	else echo "no $(VENV): nothing was started"; fi

cluster-status: $(VENV_STAMP) ## say whether the local control plane is running
	@$(CLUSTER) status --dir $(LOCAL)

crds: cluster-up ## install the LLMConnection CRD into the local cluster
	@$(KUBECTL) apply -f crds/llmconnections.yaml
	@$(KUBECTL) wait --for=condition=Established \
		--timeout=60s crd/llmconnections.llmconn.dev

# -- quality -----------------------------------------------------------------------------

# Both halves always run, so one CI log shows test and lint results together.
test: $(VENV_STAMP) binaries ## run the whole test suite, then lint
	@status=0; \
	$(VENV)/bin/pytest -p no:cacheprovider || status=$$?; \
	$(MAKE) lint || status=$$?; \
	exit $$status

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
bench: $(BENCH_STAMP) binaries $(if $(findstring blackbox,$(BENCH_ARGS)),blackbox-exporter) ## benchmark on its own control plane; BENCH_ARGS="--connections 10000 --peer naive-kopf"
	@$(PY) tests/bench/bench.py $(BENCH_ARGS)

$(BENCH_STAMP): $(VENV_STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
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

clean: cluster-down ## stop everything and remove .local state (keeps the built binaries)
	rm -rf $(LOCAL)/controlplane $(LOCAL)/logs $(LOCAL)/run $(LOCAL)/kubeconfig \
		$(LOCAL)/kubectl-cache
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis
