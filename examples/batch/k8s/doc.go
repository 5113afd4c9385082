// Package k8s holds the Kubernetes manifests of llmdrain's batch command
// (job.yaml: an Indexed Job of four shards; pvc.yaml: the volume that keeps
// the input, the outputs and the journals across pods) and, in its test,
// their check: every manifest is decoded strictly into the real Kubernetes
// API types, and terminationGracePeriodSeconds is checked against the
// drain's budget.
//
// It is a module of its own so that the library's go.mod does not carry
// the Kubernetes API modules:
//
//	cd examples/batch/k8s && go test ./...
//
// Apply with:
//
//	kubectl create secret generic llmdrain-batch --from-literal=HOLYSHEEP_API_KEY="$HOLYSHEEP_API_KEY"
//	kubectl apply -f examples/batch/k8s/pvc.yaml -f examples/batch/k8s/job.yaml
package k8s
