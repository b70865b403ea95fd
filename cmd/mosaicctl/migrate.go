package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/bytesize"
)

func newMigrateCmd(g *globals) *cobra.Command {
	var asJSON, lazy bool
	cmd := &cobra.Command{
		Use:   "migrate ID NODE|home",
		Short: "Move a running mosaic process to another node (or back home)",
		Long: `Move a running process to NODE while it runs, from any node: it is
frozen, its memory and state travel to NODE, and it goes on there where it
stopped, with the same ID, the same stdin, stdout and stderr at home, the
same signals. 'home' moves it back to its home node.

With --lazy (post-copy), the process runs on NODE as soon as its small
state is there, and its large memory follows while it runs (pages it
touches first are sent first): a much shorter freeze for a large process,
but until the last page has arrived it needs the node it left; if that
node or the link fails meanwhile, the process is lost. The command returns
when all has arrived.

A process that holds something that cannot move (a socket, a child
process, a device...) stays where it is: the error says what, and so does
'mosaic ps ID'. A move that fails leaves the process running where it was.
You may move only your own processes (root: any).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res api.MigrateResult
			if err := api.Call(cmd.Context(), g.sock(), api.OpMigrate, api.MigrateArgs{ID: args[0], Node: args[1], Lazy: lazy}, &res); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(res)
			}
			if res.LazyBytes > 0 {
				fmt.Fprintf(out, "%s now runs on %s (pid %d there): frozen %.1f ms, %s moved before it ran and %s after, in %.1f ms\n",
					res.ID, res.Node, res.PID, res.FrozenMs, bytesize.Format(res.ImageBytes), bytesize.Format(res.LazyBytes), res.TotalMs)
				return nil
			}
			fmt.Fprintf(out, "%s now runs on %s (pid %d there): frozen %.1f ms, %s moved in %.1f ms\n",
				res.ID, res.Node, res.PID, res.FrozenMs, bytesize.Format(res.ImageBytes), res.TotalMs)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	cmd.Flags().BoolVar(&lazy, "lazy", false, "post-copy: run at NODE first, bring the large memory after")
	return cmd
}
