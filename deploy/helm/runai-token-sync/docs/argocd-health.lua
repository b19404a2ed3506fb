-- Argo CD health check for RunaiCredential and ClusterRunaiCredential
-- (group tokensync.dev). Argo CD runs it in Lua 5.1 with the object as `obj`;
-- install it under resource.customizations.health.tokensync.dev_RunaiCredential
-- and resource.customizations.health.tokensync.dev_ClusterRunaiCredential in
-- the argocd-cm ConfigMap (docs/argocd-cm.yaml has both, with the refresh
-- action).
--
--   Progressing  no status yet, a generation not observed yet, or
--                Reconciling=True (a token is being obtained, or a transient
--                failure retried)
--   Healthy      Ready=True, also while Degraded=True: the token in place is
--                valid, and the message says that refreshing fails and until
--                when the token stays valid
--   Degraded     Ready=False (and not Reconciling): only a change can move it
--                on, and the message says which
--
-- A condition without a reason or a message is read as it is, never an error.
local hs = { status = "Progressing", message = "Waiting for the controller" }

local function find(conditions, wanted)
  for _, c in ipairs(conditions) do
    if type(c) == "table" and c.type == wanted then
      return c
    end
  end
  return nil
end

local function say(c)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason == "" and message == "" then
    return tostring(c.type) .. "=" .. tostring(c.status)
  end
  if reason == "" then
    return message
  end
  if message == "" then
    return reason
  end
  return reason .. ": " .. message
end

if obj.status == nil or type(obj.status.conditions) ~= "table" then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the controller to observe generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions
local reconciling = find(conditions, "Reconciling")
local ready = find(conditions, "Ready")
local degraded = find(conditions, "Degraded")

if reconciling ~= nil and reconciling.status == "True" then
  hs.message = say(reconciling)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  if degraded ~= nil and degraded.status == "True" then
    hs.message = "The token in place is valid, but refreshing fails: " .. say(degraded)
  else
    hs.message = ready.message or ""
  end
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = say(ready)
  return hs
end
if ready ~= nil then
  hs.message = say(ready)
end
return hs
