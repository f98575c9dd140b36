"""The test control plane: real etcd, kube-apiserver, controller-manager, scheduler, kwok,
the Kubeflow training operator and MinIO, built from Go modules and run on 127.0.0.1."""
