-- Argo CD action discovery for RunaiCredential and ClusterRunaiCredential:
-- offers `refresh` (docs/argocd-refresh-action.lua) on every object.
local actions = {}
actions["refresh"] = { ["disabled"] = false }
return actions
