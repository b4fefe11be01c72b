package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// cpuTime returns the user plus system CPU time a process has used.
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after it are
	// plain. utime and stime are fields 14 and 15.
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * clockTick
}

// cpuMeter measures the CPU time etcd and this process use during a phase.
type cpuMeter struct {
	etcdPID          int
	etcd0, self0     time.Duration
	etcdCPU, selfCPU time.Duration
	// childCPU is the CPU time of the processes this one ran and waited
	// for (the CNI part's cnitool and plugins); 0 elsewhere.
	childCPU time.Duration
}

func startCPU(etcdPID int) *cpuMeter {
	return &cpuMeter{etcdPID: etcdPID, etcd0: cpuTime(etcdPID), self0: cpuTime(os.Getpid())}
}

func (m *cpuMeter) stop() *cpuMeter {
	m.etcdCPU = cpuTime(m.etcdPID) - m.etcd0
	m.selfCPU = cpuTime(os.Getpid()) - m.self0
	return m
}

// perOp formats CPU per operation in microseconds: etcd + this process.
func (m *cpuMeter) perOp(ops int) string {
	if m == nil || ops == 0 {
		return "n/a"
	}
	e := m.etcdCPU.Microseconds() / int64(ops)
	s := m.selfCPU.Microseconds() / int64(ops)
	return fmt.Sprintf("%d+%d µs", e, s)
}

// machineLoad compares the CPU the whole machine used during the run with
// what this program and its children (etcd, cnitool, plugins) used: the
// rest is other work on the machine, which disturbs the measurement.
type machineLoad struct {
	busy0, ours0   time.Duration
	busy, ours     time.Duration
	wall           time.Duration
	start          time.Time
	loadAtStart    string
	loadAtEnd      string
	otherShare     float64
	otherCoreSecs  float64
	machineCPUs    int
	measuredFinish bool
}

// busyTime is the non-idle CPU time of the machine, from /proc/stat.
func busyTime() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	// user nice system idle iowait irq softirq steal: all but idle, iowait.
	for i, v := range f[1:] {
		if i == 3 || i == 4 {
			continue
		}
		if i > 7 {
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * clockTick
}

// ourTime is the CPU time of this process and its reaped children.
func ourTime() time.Duration {
	self, children := ourTimes()
	return self + children
}

// ourTimes returns the CPU time of this process and that of the children
// it waited for, apart.
func ourTimes() (self, children time.Duration) {
	var s, c syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &s)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &c)
	tv := func(t syscall.Timeval) time.Duration {
		return time.Duration(t.Sec)*time.Second + time.Duration(t.Usec)*time.Microsecond
	}
	return tv(s.Utime) + tv(s.Stime), tv(c.Utime) + tv(c.Stime)
}

// cniCPU is a reading of the CPU time the CNI part's processes used:
// this process (coild, for coil), its children (cnitool and the plugins)
// and etcd.
type cniCPU struct{ self, children, etcd time.Duration }

func readCNICPU(etcdPID int) cniCPU {
	self, children := ourTimes()
	return cniCPU{self: self, children: children, etcd: cpuTime(etcdPID)}
}

// since is the CPU used between an earlier reading c0 and c.
func (c cniCPU) since(c0 cniCPU) *cpuMeter {
	return &cpuMeter{selfCPU: c.self - c0.self, childCPU: c.children - c0.children, etcdCPU: c.etcd - c0.etcd}
}

func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func startLoad(cpus int) *machineLoad {
	return &machineLoad{busy0: busyTime(), ours0: ourTime(), start: time.Now(), loadAtStart: loadAvg(), machineCPUs: cpus}
}

func (m *machineLoad) finish() {
	m.busy = busyTime() - m.busy0
	m.ours = ourTime() - m.ours0
	m.wall = time.Since(m.start)
	m.loadAtEnd = loadAvg()
	other := max(m.busy-m.ours, 0)
	m.otherCoreSecs = other.Seconds()
	m.otherShare = other.Seconds() / (m.wall.Seconds() * float64(m.machineCPUs))
	m.measuredFinish = true
}

func (m *machineLoad) String() string {
	return fmt.Sprintf("other processes used %.0f%% of the machine's CPU during the run (%.0f core-seconds in %s); load average %s at start, %s at end",
		m.otherShare*100, m.otherCoreSecs, m.wall.Round(time.Second), m.loadAtStart, m.loadAtEnd)
}
