package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/policy"
)

func newPolicyCmd(g *globals) *cobra.Command {
	var manual, auto, guests, noGuests, asJSON bool
	cmd := &cobra.Command{
		Use:   "policy [NAME] [--manual | --auto] [--guests | --no-guests]",
		Short: "Show or change this node's placement and migration policy",
		Long: `Show this node's policy, or change it (root). Policies: ` + strings.Join(policy.Names(), ", ") + `,
or off (run every process where it is started, never move one).

--manual makes the policy only recommend moves ('mosaic recommend' lists
them); --auto lets it move processes again. --no-guests makes the node
refuse processes of other nodes (those it runs stay); --guests takes them
again. 'mosaic up --policy NAME' and 'mosaic node --policy NAME' set it at
start.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var a api.PolicyArgs
			if len(args) == 1 {
				a.Policy = args[0]
			}
			if manual && auto || guests && noGuests {
				return fmt.Errorf("--manual and --auto, or --guests and --no-guests, contradict each other: give one")
			}
			if manual || auto {
				a.Manual = &manual
			}
			if guests || noGuests {
				a.NoGuests = &noGuests
			}
			var res api.PolicyResult
			if err := api.Call(cmd.Context(), g.sock(), api.OpPolicy, a, &res); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(res)
			}
			mode := "places new processes, moves none"
			if p, err := policy.New(res.Policy); err == nil && p.Migrates() {
				mode = "places new processes and moves running ones"
				if res.Manual {
					mode = "places new processes, recommends moves (mosaic recommend)"
				}
			} else if err != nil {
				mode = "runs every process where it starts"
			}
			guestsSay := "takes guests"
			switch {
			case res.Draining:
				guestsSay = "drains: sends its guests away, takes none"
			case res.NoGuests:
				guestsSay = "takes no guests"
			}
			fmt.Fprintf(out, "%s: policy %s, %s, %s\n", res.Node, res.Policy, mode, guestsSay)
			return nil
		},
	}
	cmd.Flags().BoolVar(&manual, "manual", false, "recommend moves only")
	cmd.Flags().BoolVar(&auto, "auto", false, "move processes by policy (the default)")
	cmd.Flags().BoolVar(&noGuests, "no-guests", false, "refuse processes of other nodes")
	cmd.Flags().BoolVar(&guests, "guests", false, "take processes of other nodes again")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	return cmd
}

func newRecommendCmd(g *globals) *cobra.Command {
	var pol string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "recommend [--policy NAME]",
		Short: "List the migrations the nodes' policies would make now",
		Long: `Ask every node what its policy (or NAME, for comparison) would move now,
and list the moves without making them: the manual mode of 'mosaic policy
--manual', as VMware DRS's recommendations. 'mosaic migrate ID NODE' makes
one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var res api.RecommendResult
			if err := api.Call(cmd.Context(), g.sock(), api.OpRecommend, api.RecommendArgs{Policy: pol}, &res); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(res)
			}
			if len(res.Moves) == 0 {
				fmt.Fprintln(out, "no migration recommended")
			} else {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tFROM\tTO\tWHY")
				for _, m := range res.Moves {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.ID, m.From, m.To, m.Reason)
				}
				tw.Flush()
			}
			for node, err := range res.Errors {
				fmt.Fprintf(cmd.ErrOrStderr(), "mosaic: %s did not answer: %s\n", node, err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&pol, "policy", "", "evaluate with this policy instead of each node's own")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	return cmd
}

func newDrainCmd(g *globals) *cobra.Command {
	var undo, asJSON bool
	cmd := &cobra.Command{
		Use:   "drain NODE [--undo]",
		Short: "Send a node's guests away and take no new ones (root)",
		Long: `Make NODE refuse processes of other nodes and move those it runs away,
each to the best node that takes guests (its home, often). Processes whose
home is NODE stay and nothing is killed; guests that cannot move (pinned by
what they hold) are listed. --undo opens the node to guests again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res api.DrainResult
			if err := api.Call(cmd.Context(), g.sock(), api.OpDrain, api.DrainArgs{Node: args[0], Undo: undo}, &res); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(res)
			}
			if undo {
				fmt.Fprintf(out, "%s takes guests again\n", res.Node)
				return nil
			}
			for _, m := range res.Moved {
				fmt.Fprintf(out, "%s moved to %s\n", m.ID, m.To)
			}
			for _, m := range res.Stayed {
				fmt.Fprintf(out, "%s stays on %s: %s\n", m.ID, res.Node, m.Reason)
			}
			fmt.Fprintf(out, "%s drained: %d guests moved, %d stayed; it takes no guests until 'mosaic drain %s --undo'\n", res.Node, len(res.Moved), len(res.Stayed), res.Node)
			return nil
		},
	}
	cmd.Flags().BoolVar(&undo, "undo", false, "take guests again")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	return cmd
}
