// Package k8s holds the Kubernetes manifests of the server example
// (deployment.yaml, service.yaml, pdb.yaml) and, in its test, their check:
// every manifest is decoded strictly into the real Kubernetes API types
// (an unknown or misspelt field fails), and terminationGracePeriodSeconds
// is checked against the shutdown budget computed by the server's own
// settings package from the Deployment's env and preStop hook.
//
// It is a module of its own so that the library's go.mod does not carry
// the Kubernetes API modules:
//
//	cd examples/server/k8s && go test ./...
//
// Apply with:
//
//	kubectl create secret generic llmdrain-server --from-literal=HOLYSHEEP_API_KEY="$HOLYSHEEP_API_KEY"
//	kubectl apply -f examples/server/k8s/
package k8s
