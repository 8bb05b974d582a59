// Tiny harness around gopher-lua (github.com/yuin/gopher-lua), the Lua VM Argo CD embeds:
// tests run the Argo CD health check and resource actions in it as Argo CD does. Built into
// .local/bin/argocd-lua.
module llmconn.dev/tests/argocdlua

go 1.24.0

require (
	github.com/yuin/gopher-lua v1.1.2
	layeh.com/gopher-json v0.0.0-20190114024228-97fed8db8427
	sigs.k8s.io/yaml v1.6.0
)

require go.yaml.in/yaml/v2 v2.4.2 // indirect
