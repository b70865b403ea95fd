package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/cluster"
)

func newInitCmd() *cobra.Command {
	var p cluster.InitParams
	cmd := &cobra.Command{
		Use:   "init --dir DIR [--name NAME] [--listen IP:PORT]",
		Short: "Create a new cluster: its CA and its first node",
		Long: `Create a new cluster in DIR: a certificate authority, a cluster ID, and the
certificate of the cluster's first node. The CA key stays in DIR (mode 0600)
and never leaves it. Start the node afterwards with 'mosaic node --dir DIR'.

The node listens for its peers on IP:PORT and runs a member of the cluster
store on the next two ports.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if p.Name == "" {
				p.Name = cluster.DefaultName()
			}
			if p.Addr == "" {
				p.Addr = cluster.DefaultAddr()
			}
			n, err := cluster.Init(p)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "created cluster %s with its first node %s (%s) in %s\n", n.ClusterID, n.Name, n.Addr, n.Dir)
			fmt.Fprintf(out, "next: start it with   mosaic node --dir %s\n", n.Dir)
			fmt.Fprintf(out, "then: make a token    mosaic token create\n")
			return nil
		},
	}
	cmd.Flags().StringVar(&p.Dir, "dir", defaultDir, "data directory to create")
	cmd.Flags().StringVar(&p.Name, "name", "", "this node's name (default: the host name)")
	cmd.Flags().StringVar(&p.Addr, "listen", "", "IP:PORT this node listens on for its peers (default: this machine's first address, port 7700)")
	cmd.Flags().IntVar(&p.StoreSize, "store-size", cluster.DefaultStoreSize, "how many of the first nodes run a member of the cluster store (1, 3 or 5)")
	return cmd
}
