// Package volumes manages volume containers on a data node: the space set
// aside for one volume plus its snapshot data, which can grow but never
// shrink; the qcow2 images and backing chains of snapshots; and the space
// accounting that lets a snapshot be refused before a guest is touched.
package volumes
