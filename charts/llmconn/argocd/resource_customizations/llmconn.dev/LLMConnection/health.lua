-- Argo CD health check for llmconn.dev/LLMConnection.
-- Healthy: Ready=True for the current generation (with Deprecated=True, still Healthy, with
-- the deprecation's message). Degraded: Stalled=True or Ready=False.
-- Suspended: spec.suspend. Progressing: anything else (not validated yet, validating a new
-- generation, being deleted). The order of checks follows kstatus, so Argo CD and Flux agree.
-- Lua 5.1 only (Argo CD runs gopher-lua).

local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  if c.message ~= nil and c.message ~= "" then
    if c.reason ~= nil and c.reason ~= "" then
      return c.reason .. ": " .. c.message
    end
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Pending deletion"
  return hs
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Validation is suspended (spec.suspend)"
  return hs
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the first validation"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local ready = condition(status.conditions, "Ready")

-- A verdict about an older spec says nothing about the current one.
if generation ~= nil then
  local stale = status.observedGeneration == nil or status.observedGeneration < generation
  if ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    stale = true
  end
  if stale then
    hs.status = "Progressing"
    hs.message = "Waiting for the validation of generation " .. tostring(generation)
    return hs
  end
end

local reconciling = condition(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Validating")
  return hs
end

local stalled = condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  -- A model its provider deprecated still works: say when it retires.
  local deprecated = condition(status.conditions, "Deprecated")
  if deprecated ~= nil and deprecated.status == "True" then
    hs.message = describe(deprecated, "Deprecated")
  end
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the first validation")
return hs
