// Package crd holds the Go types from which Twill's Kubernetes
// CustomResourceDefinitions are generated: group twill.dev, version v1, all
// cluster-scoped (IPPool, IPAMBlock, IPAMHandle, IPAMConfig,
// WorkloadEndpoint). controller-gen reads these types and the markers on
// them and on the api package's spec types, and writes
// manifests/crds/twill.dev_<plural>.yaml; TestManifestsUpToDate fails when
// the committed manifests differ from its output.
//
// A custom resource's spec is the api type's spec (IPPool,
// WorkloadEndpoint) or, for the api types without metadata (Block, Handle,
// IPAMConfig), the api struct's fields without apiVersion and kind.
// Package datastore/kube maps stored values onto these resources.
//
// Package crd is not imported by the pure core (api, plan, ipam).
//
// +groupName=twill.dev
// +versionName=v1
package crd

//go:generate go tool controller-gen crd:crdVersions=v1 paths=. output:crd:dir=../manifests/crds
