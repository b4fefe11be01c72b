// Package dispatch is hypercoil: one executable that is every Coil
// command. It runs the command named by the name it was called with
// (a link named coild runs coild) or, when called as hypercoil, by its
// first argument (hypercoil coilctl pool list). Each command's logic is in
// its own package; this one only chooses.
package dispatch

import (
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/coil-project/coil/coil-controller/controller"
	egress "github.com/coil-project/coil/coil-egress/holder"
	installer "github.com/coil-project/coil/coil-installer/cmd"
	"github.com/coil-project/coil/coil/plugin"
	coilctl "github.com/coil-project/coil/coilctl/cmd"
	"github.com/coil-project/coil/coild/daemon"
)

// Name is the executable's own name.
const Name = "hypercoil"

// ExitUsage is the exit code for a name or first argument that is no
// Coil command.
const ExitUsage = 2

// command runs one Coil command with its arguments (without its name) and
// returns its exit code.
type command func(args []string, stderr io.Writer) int

// Commands are the names hypercoil answers to; the image links each to it.
var Commands = []string{"coil", "coild", "coilctl", "coil-controller", "coil-installer", "coil-egress"}

func lookup(name string) command {
	switch name {
	case "coil":
		// The CNI plugin reads CNI_* and stdin, never its arguments.
		return func([]string, io.Writer) int { plugin.Main(); return 0 }
	case "coild":
		return func(args []string, _ io.Writer) int { return daemon.Main(args) }
	case "coilctl":
		return func(args []string, _ io.Writer) int { return coilctl.Main(args) }
	case "coil-controller":
		return func(args []string, _ io.Writer) int { return controller.Main(args) }
	case "coil-installer":
		return func(args []string, _ io.Writer) int { return installer.Main(args) }
	case "coil-egress":
		return egress.Main
	}
	return nil
}

// Resolve says which command argv (os.Args) asks for and with which
// arguments: the base name of argv[0] when it is a command, else argv[1]
// when argv[0] is hypercoil. ok is false when neither names a command.
func Resolve(argv []string) (name string, args []string, ok bool) {
	if len(argv) == 0 {
		return "", nil, false
	}
	base := filepath.Base(argv[0])
	if slices.Contains(Commands, base) {
		return base, argv[1:], true
	}
	if base == Name && len(argv) > 1 && slices.Contains(Commands, argv[1]) {
		return argv[1], argv[2:], true
	}
	return "", nil, false
}

// Run runs the command argv asks for and returns its exit code; a name or
// first argument that is no command is a usage error listing them.
func Run(argv []string, stderr io.Writer) int {
	name, args, ok := Resolve(argv)
	if !ok {
		called := Name
		if len(argv) > 0 {
			called = filepath.Base(argv[0])
		}
		what := fmt.Sprintf("called as %q", called)
		if called == Name && len(argv) > 1 {
			what = fmt.Sprintf("unknown command %q", argv[1])
		}
		fmt.Fprintf(stderr, "%s: %s; run it as one of %s, by that name (a link to it) or as \"%s COMMAND [ARGS]\"\n",
			Name, what, strings.Join(Commands, ", "), Name)
		return ExitUsage
	}
	return lookup(name)(args, stderr)
}
