package k8s

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/internal/serversettings"
)

// strictDecoder decodes YAML into the typed API objects registered in its
// scheme, failing on unknown and duplicate fields.
func strictDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{batchv1.AddToScheme, corev1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
}

type manifests struct {
	jobs []*batchv1.Job
	pvcs []*corev1.PersistentVolumeClaim
}

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
			case *batchv1.Job:
				m.jobs = append(m.jobs, o)
			case *corev1.PersistentVolumeClaim:
				m.pvcs = append(m.pvcs, o)
			default:
				t.Fatalf("%s, document %d: unexpected kind %T", file, i, obj)
			}
		}
	}
	if len(m.jobs) != 1 || len(m.pvcs) != 1 {
		t.Fatalf("want one Job and one PersistentVolumeClaim; got %d, %d", len(m.jobs), len(m.pvcs))
	}
	return m
}

// TestDecoderIsStrict makes sure a misspelt field fails, so that passing
// TestJob means every field is one the API knows.
func TestDecoderIsStrict(t *testing.T) {
	doc := []byte("apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\nspec:\n  backoffLimitPerIndexx: 3\n")
	if _, _, err := strictDecoder(t).Decode(doc, nil, nil); !runtime.IsStrictDecodingError(err) {
		t.Fatalf("misspelt field accepted: %v", err)
	}
}

// commandFlags are the flags of "llmdrain batch" this test reads, with the
// command's defaults.
type commandFlags struct {
	in, out, shard string
	grace          time.Duration
}

func parseArgs(t *testing.T, args []string) commandFlags {
	t.Helper()
	if len(args) == 0 || args[0] != "batch" {
		t.Fatalf("args: want the batch subcommand first, got %q", args)
	}
	fs := flag.NewFlagSet("llmdrain batch", flag.ContinueOnError)
	var f commandFlags
	fs.StringVar(&f.in, "in", "", "")
	fs.StringVar(&f.out, "out", "", "")
	fs.StringVar(&f.shard, "shard", "", "")
	fs.DurationVar(&f.grace, "grace", 60*time.Second, "")
	fs.Int("concurrency", 0, "")
	fs.Int("max-tasks", 0, "")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		t.Fatalf("args %q: %v", args, err)
	}
	return f
}

func TestJob(t *testing.T) {
	m := load(t)
	job := m.jobs[0]
	spec := job.Spec
	pod := spec.Template.Spec

	// An Indexed Job: one shard per index.
	if spec.CompletionMode == nil || *spec.CompletionMode != batchv1.IndexedCompletion {
		t.Fatalf("completionMode: want Indexed")
	}
	if spec.Completions == nil || *spec.Completions < 1 {
		t.Fatalf("completions: want the shard count")
	}
	shards := int(*spec.Completions)
	if spec.Parallelism == nil || int(*spec.Parallelism) > shards {
		t.Errorf("parallelism: want at most completions (%d)", shards)
	}
	// Retries count per index, so one bad shard does not use up the
	// others' retries.
	if spec.BackoffLimitPerIndex == nil || *spec.BackoffLimitPerIndex < 1 {
		t.Errorf("backoffLimitPerIndex: want at least 1")
	}
	// A replacement pod starts only once the old one has terminated: two
	// pods never append to one shard's output and journal.
	if spec.PodReplacementPolicy == nil || *spec.PodReplacementPolicy != batchv1.Failed {
		t.Errorf("podReplacementPolicy: want Failed")
	}
	if pod.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy: want Never (podFailurePolicy and backoffLimitPerIndex need it)")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]

	// Exit codes: a stopped shard (3) runs again without counting as a
	// failure; bad input (2) fails the Job.
	actions := map[int32]batchv1.PodFailurePolicyAction{}
	disruption := false
	if spec.PodFailurePolicy == nil {
		t.Fatalf("podFailurePolicy: want rules for llmdrain's exit codes")
	}
	for _, r := range spec.PodFailurePolicy.Rules {
		if r.OnExitCodes != nil {
			if r.OnExitCodes.ContainerName == nil || *r.OnExitCodes.ContainerName != c.Name || r.OnExitCodes.Operator != batchv1.PodFailurePolicyOnExitCodesOpIn {
				t.Errorf("podFailurePolicy: exit code rules name the container %q with operator In", c.Name)
			}
			for _, v := range r.OnExitCodes.Values {
				actions[v] = r.Action
			}
		}
		for _, pc := range r.OnPodConditions {
			if pc.Type == corev1.DisruptionTarget && r.Action == batchv1.PodFailurePolicyActionIgnore {
				disruption = true
			}
		}
	}
	if actions[3] != batchv1.PodFailurePolicyActionIgnore {
		t.Errorf("exit code 3 (stopped, resumable): want Ignore, got %q", actions[3])
	}
	if actions[2] != batchv1.PodFailurePolicyActionFailJob {
		t.Errorf("exit code 2 (bad input or configuration): want FailJob, got %q", actions[2])
	}
	if !disruption {
		t.Errorf("podFailurePolicy: want Ignore on the DisruptionTarget condition (eviction, preemption)")
	}

	// The command: one shard per index, the index from the Job controller.
	f := parseArgs(t, c.Args)
	if f.shard != strconv.Itoa(shards) {
		t.Errorf("-shard %q: want %d, the completions, with the index from $JOB_COMPLETION_INDEX", f.shard, shards)
	}
	for _, e := range c.Env {
		if e.Name == "JOB_COMPLETION_INDEX" {
			t.Errorf("env JOB_COMPLETION_INDEX: the Job controller sets it")
		}
	}
	var keyRef *corev1.SecretKeySelector
	for _, e := range c.Env {
		if e.Name == llmdrain.EnvAPIKey {
			if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				t.Errorf("%s must come from a secretKeyRef", llmdrain.EnvAPIKey)
			} else {
				keyRef = e.ValueFrom.SecretKeyRef
			}
		}
	}
	if keyRef == nil || keyRef.Name == "" || keyRef.Key == "" {
		t.Errorf("%s: want a secretKeyRef with a name and key", llmdrain.EnvAPIKey)
	}

	// The input, outputs and journals (beside the outputs) are on a
	// volume that outlives the pod: the claim in pvc.yaml, mountable by
	// every shard's pod at once.
	pvc := m.pvcs[0]
	for _, path := range []string{f.in, f.out} {
		vol := volumeOf(t, pod, c, path)
		if vol == nil || vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != pvc.Name {
			t.Errorf("%s is not on the PersistentVolumeClaim %q", path, pvc.Name)
		}
	}
	if *spec.Parallelism > 1 && !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) {
		t.Errorf("the claim must be ReadWriteMany for %d pods on any nodes", *spec.Parallelism)
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.IsZero() {
		t.Errorf("resources.limits.memory is not set")
	}

	// The timing budget: the kubelet's SIGKILL must come after the
	// longest drain llmdrain can run: -grace, then Shutdown's forced
	// phase, then closing files and exiting.
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatalf("terminationGracePeriodSeconds is not set (the default 30s is below -grace)")
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	budget := f.grace + llmdrain.ShutdownGrace + serversettings.ExitGrace
	t.Logf("-grace %v + ShutdownGrace %v + ExitGrace %v = %v; terminationGracePeriodSeconds %v (margin %v, need %v)",
		f.grace, llmdrain.ShutdownGrace, serversettings.ExitGrace, budget, grace, grace-budget, serversettings.MinMargin)
	if grace < budget+serversettings.MinMargin {
		t.Errorf("terminationGracePeriodSeconds %v does not cover -grace + ShutdownGrace + ExitGrace = %v plus the %v margin",
			grace, budget, serversettings.MinMargin)
	}
}

// volumeOf returns the pod volume mounted where path is.
func volumeOf(t *testing.T, pod corev1.PodSpec, c corev1.Container, path string) *corev1.Volume {
	t.Helper()
	var best *corev1.VolumeMount
	for i, vm := range c.VolumeMounts {
		mp := strings.TrimSuffix(vm.MountPath, "/") + "/"
		if strings.HasPrefix(path, mp) && (best == nil || len(vm.MountPath) > len(best.MountPath)) {
			best = &c.VolumeMounts[i]
		}
	}
	if best == nil {
		return nil
	}
	for i, v := range pod.Volumes {
		if v.Name == best.Name {
			return &pod.Volumes[i]
		}
	}
	return nil
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
