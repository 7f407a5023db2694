// Package crds embeds Twill's CustomResourceDefinition manifests (group
// twill.dev, generated from package crd by controller-gen; do not edit the
// YAML by hand), so that programs can install them without the source tree.
// Apply them by hand with: kubectl apply -f manifests/crds
package crds

import "embed"

// FS holds the manifests, one CustomResourceDefinition per file, named
// twill.dev_<plural>.yaml.
//
//go:embed *.yaml
var FS embed.FS
