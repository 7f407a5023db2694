// Command twill is Twill's single binary: the CLI, the datastore server, the
// node agent and the lab. See the README.
package main

import (
	"os"

	"twill.dev/twill/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
