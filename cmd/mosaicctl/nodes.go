package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/bytesize"
)

func newNodesCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "nodes [--json]",
		Short: "List the nodes of the cluster, their state and load",
		Long: `List every node this node knows of, as this node sees it:

  STATE   alive, suspect (missed its probes), dead, or left (said goodbye)
  CORES   CPUs its processes may use; CAP: cores' worth of CPU it offers
  SPEED   per-core speed relative to the reference (1.00)
  LOAD    runnable processes per reference core (MOSIX load: rises fast,
          decays slowly); 1.00 = one busy process per core of capacity
  FREE    memory free for new processes, of the memory it offers
  PROCS   processes it runs
  AGE     how old this node's news about it is (load travels by gossip)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var nodes []api.NodeInfo
			if err := api.Call(cmd.Context(), g.sock(), api.OpNodes, nil, &nodes); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(nodes)
			}
			return printNodes(cmd.OutOrStdout(), nodes)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	return cmd
}

func printNodes(out io.Writer, nodes []api.NodeInfo) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tADDRESS\tSTATE\tCORES\tCAP\tSPEED\tLOAD\tFREE\tPROCS\tAGE\tPOLICY")
	for _, n := range nodes {
		name := n.Name
		if n.Self {
			name += "*"
		}
		capacity := "all"
		if n.Capacity > 0 {
			capacity = strconv.FormatFloat(n.Capacity, 'g', 3, 64)
		}
		ld, free, procs, age := "-", "-", "-", "-"
		if n.HasLoad {
			ld = fmt.Sprintf("%.2f", n.Load)
			free = bytesize.Format(n.MemFree) + "/" + bytesize.Format(n.MemTotal)
			procs = strconv.Itoa(int(n.Procs))
			age = (time.Duration(n.AgeMs) * time.Millisecond).Round(100 * time.Millisecond).String()
		}
		pol := n.Policy
		if pol == "" {
			pol = "-"
		}
		if n.NoGuests {
			pol += ", no guests"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\n",
			name, n.Addr, n.State, n.Cores, capacity, n.Speed, ld, free, procs, age, pol)
	}
	return w.Flush()
}

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show this node's daemon: identity, store, load, gossip traffic",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var st api.Status
			if err := api.Call(cmd.Context(), g.sock(), api.OpStatus, nil, &st); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			store := "ok"
			if !st.StoreOK {
				store = st.StoreError
			}
			role := "client"
			if st.StoreMember {
				role = "member"
			}
			capacity := "all cores"
			if st.Capacity > 0 {
				capacity = strconv.FormatFloat(st.Capacity, 'g', 3, 64) + " cores"
			}
			fmt.Fprintf(out, "node       %s (cluster %s, %s)\n", st.Name, st.ClusterID, st.Addr)
			fmt.Fprintf(out, "daemon     pid %d, up %s, mosaic %s, incarnation %d\n", st.PID, time.Since(st.Started).Round(time.Second), st.Version, st.Incarnation)
			fmt.Fprintf(out, "store      %s (%s)\n", role, store)
			fmt.Fprintf(out, "capacity   %s of %d, speed %.2f, shared=%v\n", capacity, st.Cores, st.Speed, st.Shared)
			fmt.Fprintf(out, "load       %.2f (local %.2f, run queue %d)\n", st.Load, st.LocalLoad, st.RunQueue)
			fmt.Fprintf(out, "gossip     %d messages, %s sent; window %d every %dms\n", st.GossipMsgs, bytesize.Format(st.GossipBytes), st.GossipWindow, st.GossipEveryMs)
			fmt.Fprintf(out, "data       %s\n", st.DataDir)
			if st.Cgroup != "" {
				fmt.Fprintf(out, "cgroup     %s\n", st.Cgroup)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	return cmd
}
