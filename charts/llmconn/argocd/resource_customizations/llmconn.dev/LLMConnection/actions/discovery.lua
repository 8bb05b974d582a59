-- Argo CD resource actions for llmconn.dev/LLMConnection. "validate" asks the operator to
-- validate the connection now. It is disabled while spec.suspend is true, because the
-- operator does not validate a suspended connection.
local actions = {}
local suspended = obj.spec ~= nil and obj.spec.suspend == true
actions["validate"] = {
  ["disabled"] = suspended,
  ["displayName"] = "Validate now",
  ["iconClass"] = "fa fa-fw fa-redo",
}
return actions
