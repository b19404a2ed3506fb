//! Unit tests of the pure decisions of a ClusterRunaiCredential.
