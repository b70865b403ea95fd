package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
)

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke join tokens (root)",
	}
	var a api.TokenCreateArgs
	var quiet bool
	create := &cobra.Command{
		Use:   "create [--ttl 1h] [--uses N]",
		Short: "Print a new join token",
		Long: `Print a new join token. A new machine joins with it:
  mosaic node --dir DIR --join IP:PORT --token TOKEN
The token carries a fingerprint of the cluster CA, so the new machine checks
it is talking to this cluster before it sends the token. It is valid for
--ttl and, with --uses, for that many joins; revoke it earlier with
'mosaic token revoke ID'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var t api.TokenCreated
			if err := api.Call(cmd.Context(), g.sock(), api.OpTokenCreate, a, &t); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if quiet {
				fmt.Fprintln(out, t.Token)
				return nil
			}
			fmt.Fprintln(out, t.Token)
			fmt.Fprintf(out, "\nid %s, valid until %s. Join a machine with:\n  mosaic node --dir %s --join %s --token %s\n",
				t.ID, t.Expires.Local().Format(time.DateTime), "/var/lib/mosaic", t.Join, t.Token)
			return nil
		},
	}
	create.Flags().DurationVar(&a.TTL, "ttl", time.Hour, "how long the token is valid (1s to 168h)")
	create.Flags().IntVar(&a.MaxUses, "uses", 0, "how many joins it allows (0 = any number until it expires)")
	create.Flags().StringVar(&a.Note, "note", "", "a note shown by 'mosaic token list'")
	create.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the token")

	list := &cobra.Command{
		Use:   "list",
		Short: "List join tokens (without their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ts []api.TokenInfo
			if err := api.Call(cmd.Context(), g.sock(), api.OpTokenList, nil, &ts); err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tSTATUS\tEXPIRES\tUSES\tNOTE")
			for _, t := range ts {
				uses := fmt.Sprint(t.Uses)
				if t.MaxUses > 0 {
					uses += "/" + fmt.Sprint(t.MaxUses)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Status, t.Expires.Local().Format(time.DateTime), uses, t.Note)
			}
			return w.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID|TOKEN",
		Short: "Revoke a join token now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t api.TokenInfo
			if err := api.Call(cmd.Context(), g.sock(), api.OpTokenRevoke, api.TokenRevokeArgs{ID: args[0]}, &t); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %s revoked\n", t.ID)
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
