// The test node's sandbox (pause) program: the process that holds a pod's namespaces.
module llmconn.dev/tests/node/pause

go 1.24.0
