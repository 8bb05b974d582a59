-- Argo CD action "validate": sets the llmconn.dev/validate-requested-at annotation to the
-- current time (UTC). The operator answers a new value with one validation and echoes the
-- value in status.lastHandledRequestedAt. External Secrets' "refresh" action works the same.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["llmconn.dev/validate-requested-at"] = os.date("!%Y-%m-%dT%XZ")
return obj
