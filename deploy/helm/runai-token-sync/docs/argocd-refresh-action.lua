-- Argo CD resource action `refresh` for RunaiCredential and
-- ClusterRunaiCredential: sets tokensync.dev/refresh-requested-at to the
-- current time (RFC 3339, UTC), which asks the controller for a new token
-- once. Argo CD runs it in Lua 5.1 with the object as `obj` and applies the
-- object it returns.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["tokensync.dev/refresh-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
