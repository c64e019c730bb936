// Command idem runs the idem demo and server, and inspects and repairs idem
// stores.
//
// Usage:
//
//	idem <command> [flags] [args]
//
// Run `idem help` for the list of commands.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// command is one subcommand. Each lives in its own file and registers
// itself from init, so that files can be added without touching this one.
type command struct {
	name    string
	args    string // synopsis of the arguments after the flags
	summary string // one line for `idem help`
	// setup defines the command's flags on fs and returns the function
	// that runs it once fs is parsed: args are the remaining arguments;
	// results go to stdout, diagnostics to stderr.
	setup func(fs *flag.FlagSet) func(args []string, stdout, stderr io.Writer) error
}

var commands = map[string]*command{}

func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("idem: command registered twice: " + c.name)
	}
	commands[c.name] = c
}

// errUsage marks an error caused by how the command was called; main
// prints the command's usage after it and exits with code 2.
var errUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, a...)...)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			if c, ok := commands[args[1]]; ok {
				fs := flag.NewFlagSet("idem "+c.name, flag.ContinueOnError)
				fs.SetOutput(stdout)
				c.setup(fs)
				printUsage(fs, c)
				return 0
			}
		}
		help(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "idem: unknown command %q\n\n", args[0])
		help(stderr)
		return 2
	}
	fs := flag.NewFlagSet("idem "+c.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { printUsage(fs, c) }
	runFn := c.setup(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := runFn(fs.Args(), stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "idem %s: %v\n", c.name, strings.TrimPrefix(err.Error(), "usage: "))
		if errors.Is(err, errUsage) {
			printUsage(fs, c)
			return 2
		}
		return 1
	}
	return 0
}

func printUsage(fs *flag.FlagSet, c *command) {
	w := fs.Output()
	fmt.Fprintf(w, "usage: idem %s [flags] %s\n\n%s\n\nflags:\n", c.name, c.args, c.summary)
	fs.PrintDefaults()
}

func help(w io.Writer) {
	fmt.Fprintln(w, "idem: an idempotency record store\n\nusage: idem <command> [flags] [args]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun `idem help <command>` for its flags.")
}
