package k8s

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/llmdrain/llmdrain/internal/serversettings"
)

// strictDecoder decodes YAML into the typed API objects registered in its
// scheme, failing on unknown and duplicate fields.
func strictDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{appsv1.AddToScheme, corev1.AddToScheme, policyv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
}

type manifests struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	pdbs        []*policyv1.PodDisruptionBudget
}

// load decodes every document of every *.yaml file in this directory.
func load(t *testing.T) manifests {
	t.Helper()
	dec := strictDecoder(t)
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var m manifests
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
		for i := 0; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if onlyComments(doc) {
				continue
			}
			obj, _, err := dec.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s, document %d: %v", file, i, err)
			}
			switch o := obj.(type) {
			case *appsv1.Deployment:
				m.deployments = append(m.deployments, o)
			case *corev1.Service:
				m.services = append(m.services, o)
			case *policyv1.PodDisruptionBudget:
				m.pdbs = append(m.pdbs, o)
			default:
				t.Fatalf("%s, document %d: unexpected kind %T", file, i, obj)
			}
		}
	}
	if len(m.deployments) != 1 || len(m.services) != 1 || len(m.pdbs) != 1 {
		t.Fatalf("want one Deployment, Service and PodDisruptionBudget; got %d, %d, %d",
			len(m.deployments), len(m.services), len(m.pdbs))
	}
	return m
}

// TestDecoderIsStrict makes sure a misspelt field fails, so that passing
// TestManifests means every field is one the API knows.
func TestDecoderIsStrict(t *testing.T) {
	doc := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      terminationGracePeriodSecond: 75\n")
	if _, _, err := strictDecoder(t).Decode(doc, nil, nil); !runtime.IsStrictDecodingError(err) {
		t.Fatalf("misspelt field accepted: %v", err)
	}
}

func TestManifests(t *testing.T) {
	m := load(t)
	d := m.deployments[0]
	pod := d.Spec.Template.Spec
	podLabels := labels.Set(d.Spec.Template.Labels)

	// Rolling updates never drop below the replica count.
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate == nil {
		t.Fatalf("strategy: want RollingUpdate, got %+v", d.Spec.Strategy)
	}
	ru := d.Spec.Strategy.RollingUpdate
	if ru.MaxUnavailable == nil || ru.MaxUnavailable.String() != "0" {
		t.Errorf("maxUnavailable: want 0, got %v", ru.MaxUnavailable)
	}
	if ru.MaxSurge == nil || ru.MaxSurge.String() == "0" || ru.MaxSurge.String() == "0%" {
		t.Errorf("maxSurge: want at least 1 with maxUnavailable 0, got %v", ru.MaxSurge)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("replicas: want at least 2 for a drain to have somewhere to send traffic")
	}

	// Selectors: Deployment, Service and PDB all pick these pods.
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(podLabels) {
		t.Errorf("deployment selector %v does not match the pod labels %v", d.Spec.Selector, podLabels)
	}
	svc := m.services[0]
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
		t.Errorf("service selector %v does not match the pod labels %v", svc.Spec.Selector, podLabels)
	}
	pdb := m.pdbs[0]
	if sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err != nil || sel.Empty() || !sel.Matches(podLabels) {
		t.Errorf("PDB selector %v does not match the pod labels %v", pdb.Spec.Selector, podLabels)
	}

	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]

	// The server's own configuration, read from the manifest's env.
	cfg, err := serversettings.FromEnv(envLookup(t, c.Env))
	if err != nil {
		t.Fatalf("the server would reject the manifest's env: %v", err)
	}
	port := containerPort(t, c, "http")
	if _, p, err := net.SplitHostPort(cfg.Addr); err != nil || p != strconv.Itoa(int(port)) {
		t.Errorf("ADDR %q does not listen on the container port %d", cfg.Addr, port)
	}
	if svc.Spec.Ports[0].TargetPort != intstr.FromString("http") && svc.Spec.Ports[0].TargetPort != intstr.FromInt32(port) {
		t.Errorf("service targetPort %v is not the container's http port", svc.Spec.Ports[0].TargetPort)
	}

	// The key comes from a Secret, never a literal.
	var keyRef *corev1.SecretKeySelector
	for _, e := range c.Env {
		if e.Name == "HOLYSHEEP_API_KEY" {
			if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("HOLYSHEEP_API_KEY must come from a secretKeyRef")
			} else {
				keyRef = e.ValueFrom.SecretKeyRef
			}
		}
	}
	if keyRef == nil || keyRef.Name == "" || keyRef.Key == "" {
		t.Errorf("HOLYSHEEP_API_KEY: want a secretKeyRef with a name and key, got %+v", keyRef)
	}

	// Probes on the server's endpoints.
	checkProbe(t, "readiness", c.ReadinessProbe, "/readyz")
	checkProbe(t, "liveness", c.LivenessProbe, "/healthz")

	// preStop: the native sleep action, not exec.
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Fatalf("want a preStop sleep action")
	}
	if c.Lifecycle.PreStop.Exec != nil || c.Lifecycle.PreStop.HTTPGet != nil {
		t.Errorf("preStop: want only the sleep action")
	}
	preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	if preStop <= 0 {
		t.Errorf("preStop sleep: want a positive duration, got %v", preStop)
	}

	// Resources: requests for scheduling, a memory limit against leaks.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("resources.requests.%s is not set", r)
		}
	}
	limit, ok := c.Resources.Limits[corev1.ResourceMemory]
	if !ok || limit.IsZero() {
		t.Errorf("resources.limits.memory is not set")
	}
	// GOMEMLIMIT, the Go runtime's soft limit, below the container's
	// hard one, with room for what the heap does not count.
	var memLimit string
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			memLimit = e.Value
		}
	}
	// Go writes 200MiB where Kubernetes writes 200Mi.
	soft, err := resource.ParseQuantity(strings.TrimSuffix(strings.Replace(memLimit, "iB", "i", 1), "B"))
	switch {
	case memLimit == "" || err != nil:
		t.Errorf("GOMEMLIMIT %q: want the Go runtime's soft memory limit set, such as 200MiB (%v)", memLimit, err)
	case soft.Cmp(limit) >= 0 || float64(soft.Value()) > 0.9*float64(limit.Value()):
		t.Errorf("GOMEMLIMIT %s must leave at least 10%% of the memory limit %s to the rest of the process", memLimit, limit.String())
	}
	// The bounds the memory limit was measured against (the server's
	// TestMemoryBoundedUnderAttack) are the defaults or tighter.
	if cfg.MaxInFlight > serversettings.DefaultMaxInFlight || cfg.MaxBodyBytes > serversettings.DefaultMaxBodyBytes {
		t.Errorf("MAX_IN_FLIGHT %d and MAX_BODY_BYTES %d above the measured defaults %d and %d: measure the memory again",
			cfg.MaxInFlight, cfg.MaxBodyBytes, serversettings.DefaultMaxInFlight, serversettings.DefaultMaxBodyBytes)
	}

	// The timing budget: the kubelet's SIGKILL must come after the
	// longest drain the server can run.
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatalf("terminationGracePeriodSeconds is not set (the default 30s is below DRAIN_TIMEOUT)")
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	budget := cfg.ShutdownBudget(preStop)
	t.Logf("preStop %v + DRAIN_DELAY %v + DRAIN_TIMEOUT %v + ExitGrace %v = %v; terminationGracePeriodSeconds %v (margin %v, need %v)",
		preStop, cfg.DrainDelay, cfg.DrainTimeout, serversettings.ExitGrace, budget, grace, grace-budget, serversettings.MinMargin)
	if grace < budget+serversettings.MinMargin {
		t.Errorf("terminationGracePeriodSeconds %v does not cover preStop + DRAIN_DELAY + DRAIN_TIMEOUT + ExitGrace = %v plus the %v margin",
			grace, budget, serversettings.MinMargin)
	}
}

// envLookup turns a container's env into a lookup for serversettings.FromEnv.
// Variables set from a Secret or elsewhere are reported as set but empty
// (their value is not in the manifest).
func envLookup(t *testing.T, env []corev1.EnvVar) func(string) (string, bool) {
	t.Helper()
	vars := make(map[string]string, len(env))
	for _, e := range env {
		if _, dup := vars[e.Name]; dup {
			t.Errorf("env %s is set twice", e.Name)
		}
		vars[e.Name] = e.Value
	}
	return func(name string) (string, bool) { v, ok := vars[name]; return v, ok }
}

func containerPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container has no port named %q", name)
	return 0
}

func checkProbe(t *testing.T, kind string, p *corev1.Probe, path string) {
	t.Helper()
	switch {
	case p == nil || p.HTTPGet == nil:
		t.Errorf("%s probe: want an httpGet probe", kind)
	case p.HTTPGet.Path != path:
		t.Errorf("%s probe: path %q, want %q", kind, p.HTTPGet.Path, path)
	case p.HTTPGet.Port != intstr.FromString("http"):
		t.Errorf("%s probe: port %v, want the http port", kind, p.HTTPGet.Port)
	}
}

// onlyComments reports whether a YAML document has nothing but comments
// and blank lines, as after a trailing "---".
func onlyComments(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' && !bytes.Equal(line, []byte("---")) {
			return false
		}
	}
	return true
}
