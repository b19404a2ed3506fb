-- Argo CD health check for RunaiCredential and ClusterRunaiCredential
-- (group tokensync.dev). Argo CD runs it in Lua 5.1 with the object as `obj`;
-- install it under resource.customizations.health.tokensync.dev_RunaiCredential
-- and resource.customizations.health.tokensync.dev_ClusterRunaiCredential in
-- the argocd-cm ConfigMap (see the README, "For platform teams").
--
--   Healthy      Ready=True and refreshing works
--   Degraded     Stalled=True (only a person can fix it: the message says what),
--                or Degraded=True (refreshing fails; the current token is still
--                valid until the time the message gives)
--   Progressing  anything else: no status yet, a generation not observed yet,
--                or Reconciling=True (a token is being obtained or retried)
local hs = { status = "Progressing", message = "Waiting for the controller" }

local function find(conditions, wanted)
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function say(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions
local ready = find(conditions, "Ready")
local stalled = find(conditions, "Stalled")
local degraded = find(conditions, "Degraded")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = say(stalled)
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = say(degraded)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
if ready ~= nil then
  hs.message = say(ready)
end
return hs
