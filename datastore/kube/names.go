package kube

import (
	"crypto/sha256"
	"encoding/hex"

	"k8s.io/apimachinery/pkg/util/validation"
)

// AnnotationName holds an object's logical name when that name is not a
// valid Kubernetes object name and the object is stored under a hashed one.
const AnnotationName = "twill.dev/name"

// hashedPrefix starts every hashed object name.
const hashedPrefix = "x-"

// ObjectName returns the Kubernetes object name for a logical name: the name
// itself when it is a valid DNS-1123 subdomain (at most 253 characters of
// [a-z0-9.-], starting and ending with a letter or digit), else "x-"
// followed by the first 40 hex digits of the name's SHA-256, with the
// logical name kept in the twill.dev/name annotation. Handle IDs with upper
// case, names with "/" and over-long container IDs take the second form.
func ObjectName(name string) string {
	if len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return hashedPrefix + hex.EncodeToString(sum[:])[:40]
}

// logicalName returns the logical name of an object with the given
// Kubernetes name and annotations.
func logicalName(objName string, annotations map[string]string) string {
	if n, ok := annotations[AnnotationName]; ok && n != "" {
		return n
	}
	return objName
}
